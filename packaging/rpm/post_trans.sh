# gce-guest-agents %posttrans: put back the admin's instance_configs.cfg if Google's %postun
# deleted it (see %pretrans), then let the daemons read it.
saved=/var/lib/google/gce-guest-agents.instance_configs.saved
cfg=/etc/default/instance_configs.cfg
if [ -f "$saved" ]; then
  if [ ! -e "$cfg" ] && [ ! -L "$cfg" ]; then
    cp -p "$saved" "$cfg"
    echo "gce-guest-agents: restored $cfg, which google-guest-agent's removal deleted"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      systemctl try-restart gce-accounts-daemon.service gce-clock-skew-daemon.service \
        gce-ip-forwarding-daemon.service || :
    fi
  fi
  # Google's agent still installed (it was not part of this transaction): nothing happened yet.
  [ -x /usr/bin/google_guest_agent ] || rm -f "$saved"
fi
exit 0
