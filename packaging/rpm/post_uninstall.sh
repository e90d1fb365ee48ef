# gce-guest-agents %postun ($1: 0 = erase, 1 = upgrade).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || :
fi
exit 0
