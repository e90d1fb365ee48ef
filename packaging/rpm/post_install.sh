# gce-guest-agents %post ($1: 1 = install, 2 = upgrade). Units are enabled explicitly, not via
# `systemctl preset` (which fails in chroots); started only when systemd runs.
DAEMONS="gce-accounts-daemon.service gce-clock-skew-daemon.service gce-ip-forwarding-daemon.service"
UNITS="$DAEMONS gce-startup-scripts.service gce-shutdown-scripts.service gce-instance-setup.service"
mkdir -p /var/lib/google
if command -v systemctl >/dev/null 2>&1; then
  [ -d /run/systemd/system ] && systemctl daemon-reload || :
  if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable $UNITS >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
      # Replacing Google's agent (`dnf swap`): its package is erased after this scriptlet, so
      # stop its daemons first; never two agents at once. Not its shutdown-scripts unit: its
      # binary is still installed here and stopping it would run the shutdown scripts.
      for u in google-guest-agent.service google-accounts-daemon.service \
               google-clock-skew-daemon.service google-network-daemon.service; do
        systemctl is-active --quiet "$u" 2>/dev/null && { systemctl stop "$u" || :; }
      done
      systemctl start $DAEMONS gce-shutdown-scripts.service || :
    fi
  elif [ -d /run/systemd/system ]; then
    systemctl try-restart $DAEMONS || :
  fi
fi
exit 0
