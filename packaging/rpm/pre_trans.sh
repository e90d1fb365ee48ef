# gce-guest-agents %pretrans. Google's google-guest-agent rpm deletes
# /etc/default/instance_configs.cfg in its %postun when it is erased, and `dnf swap
# google-guest-agent gce-guest-agents` erases it in the transaction that installs us: keep a copy of
# the admin's file for %posttrans to put back.
if [ -x /usr/bin/google_guest_agent ] && [ -f /etc/default/instance_configs.cfg ] \
   && [ ! -L /etc/default/instance_configs.cfg ]; then
  mkdir -p /var/lib/google
  cp -p /etc/default/instance_configs.cfg /var/lib/google/gce-guest-agents.instance_configs.saved
fi
exit 0
