"""Prints the versions of the libraries the image installed."""
import attr
import click
import requests
import six


@click.command()
def main():
    for module in (attr, click, requests, six):
        click.echo(f"{module.__name__} {module.__version__}")


if __name__ == "__main__":
    main()
