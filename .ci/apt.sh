# Sourced by .ci/setup and .ci/test-deps: install Debian packages without touching a host service.
# Packages that are already installed are left alone (no upgrade, no restart). A daemon package that
# is new (nginx, sshd, ...) would be started by its maintainer script: jailkit runs these services
# in jails, and a server's ports are not ours to take, so while apt runs a policy-rc.d (the hook
# invoke-rc.d and deb-systemd-invoke ask) refuses every start, stop and restart. An existing
# policy-rc.d is never replaced.
apt_install() {
  local missing=() p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# jailkit setup: no service starts while it installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || status=$?
  [ -n "$made_policy" ] && rm -f "$policy"
  return "$status"
}
