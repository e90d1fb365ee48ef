# gce-guest-agents %preun ($1: 0 = erase, 1 = upgrade). On erase: stop (without running the
# shutdown scripts) and disable.
DAEMONS="gce-accounts-daemon.service gce-clock-skew-daemon.service gce-ip-forwarding-daemon.service"
UNITS="$DAEMONS gce-startup-scripts.service gce-shutdown-scripts.service gce-instance-setup.service"
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    d=/run/systemd/system/gce-shutdown-scripts.service.d
    mkdir -p "$d"
    printf '[Service]\nExecStop=\nExecStop=/bin/true\n' >"$d/50-package-removal.conf"
    systemctl daemon-reload || :
    systemctl stop $UNITS || :
    rm -rf "$d"
  fi
  systemctl --no-reload disable $UNITS >/dev/null 2>&1 || :
fi
exit 0
