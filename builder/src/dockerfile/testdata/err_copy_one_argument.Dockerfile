FROM alpine

COPY onlyone
