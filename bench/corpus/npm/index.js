// Prints a few facts through the installed dependencies.
const chalk = require("chalk");
const { program } = require("commander");
const _ = require("lodash");
const ms = require("ms");
const semver = require("semver");

program.option("-v, --verbose");
program.parse();
console.log(chalk.green(`node ${process.version}`), semver.major(process.version));
console.log(_.chunk([1, 2, 3, 4], 2), ms("2 days"));
