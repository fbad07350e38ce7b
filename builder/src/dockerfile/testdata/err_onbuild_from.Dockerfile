FROM alpine
ONBUILD FROM other
