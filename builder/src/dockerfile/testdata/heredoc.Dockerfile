FROM alpine
RUN <<EOF
echo one
echo two
EOF
RUN <<-'SCRIPT'
	#!/bin/sh
	echo "$HOME"
	SCRIPT
RUN cat <<A >a && cat <<"B" >b
a body $X
A
b body $X
B
COPY <<EOF /etc/conf
value=$X
EOF
COPY <<-"LIT" /lit
	keep $X
	LIT
ONBUILD RUN cat <<E >x
onbuild body
E
