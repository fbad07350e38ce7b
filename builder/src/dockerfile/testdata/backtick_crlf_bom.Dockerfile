# escape=`
FROM alpine
RUN dir c:\ `
  && echo done
WORKDIR c:\app
