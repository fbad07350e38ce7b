#!/bin/sh
echo "${GREETING:-hello}, built on $(uname -s) without a daemon"
