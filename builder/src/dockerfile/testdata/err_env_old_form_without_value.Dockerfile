FROM alpine
ENV novalue
