# syntax=docker/dockerfile:1
# a comment that is not a directive
ARG BASE=alpine:3.20 VERSION
FROM ${BASE} AS Build
ENV A=1 B="two words" C=a\ b
ENV OLD  form with   spaces
LABEL org.example="x y" other=z
RUN --mount=type=cache,target=/root/.cache --network=none apk add \
    # a comment inside the continuation
    curl \

    git
COPY --from=build --chown=1:1 --chmod=644 --link a b /dst/
ADD --checksum=sha256:abc --keep-git-dir https://example.com/x /x
WORKDIR /src/$A
USER app:app
EXPOSE 80/tcp 443
VOLUME ["/data", "/logs"]
VOLUME /a /b
STOPSIGNAL SIGTERM
SHELL ["/bin/bash", "-c"]
HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD curl -f http://localhost/
ONBUILD RUN echo triggered
MAINTAINER someone

FROM scratch
COPY --from=0 /out /
CMD ["/app", "--flag"]
ENTRYPOINT exec /app
HEALTHCHECK NONE
