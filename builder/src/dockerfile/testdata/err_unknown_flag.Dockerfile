FROM alpine
COPY --frm=x a b
