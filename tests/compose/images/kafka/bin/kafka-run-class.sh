#!/bin/bash
# A tool's main class on the broker's class path; logs only warnings, on stderr.
exec java -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.xml \
    -cp '/opt/kafka/libs/*' "$@"
