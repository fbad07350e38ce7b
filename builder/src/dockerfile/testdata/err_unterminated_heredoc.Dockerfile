FROM alpine
RUN cat <<EOF >x
body
EOS
