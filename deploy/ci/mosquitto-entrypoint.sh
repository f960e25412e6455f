#!/bin/sh
# As in the official eclipse-mosquitto image: started as root, give /mosquitto to the broker's
# user (a read-only configuration mount is left alone), then run the command. Mosquitto drops
# to that user itself.
set -e
if [ "$(id -u)" = 0 ]; then
  chown -R mosquitto:mosquitto /mosquitto 2>/dev/null || true
fi
exec "$@"
