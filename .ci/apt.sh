# Sourced by .ci/setup and .ci/test-deps: install Debian packages without touching a host service.
# Packages that are already installed are left alone (no upgrade, no restart). A daemon package that
# is new (nginx, sshd, ...) would be started by its maintainer script: jailkit runs these services
# in jails, and a server's ports are not ours to take, so while apt runs a policy-rc.d (the hook
# invoke-rc.d and deb-systemd-invoke ask) refuses every start, stop and restart. An existing
# policy-rc.d is never replaced. Debian also enables a new daemon for the next boot: every unit
# and init script the newly installed packages (dependencies too: nginx.service is nginx-common's)
# brought is disabled again, so that a reboot does not start them either.
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
  local status=0 before
  before=$(installed_packages)
  DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || status=$?
  comm -13 <(echo "$before") <(installed_packages) | disable_at_boot
  [ -n "$made_policy" ] && rm -f "$policy"
  return "$status"
}

installed_packages() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort
}

# Reads package names; disables the systemd units and init scripts they ship.
disable_at_boot() {
  local package file
  while read -r package; do
    dpkg-query -L "$package" 2>/dev/null | while read -r file; do
      case "$file" in
        /lib/systemd/system/*.service | /lib/systemd/system/*.socket | \
          /usr/lib/systemd/system/*.service | /usr/lib/systemd/system/*.socket)
          [[ "$file" == *@* ]] || deb-systemd-helper disable "${file##*/}" >/dev/null 2>&1 || true ;;
        /etc/init.d/*)
          update-rc.d "${file##*/}" disable >/dev/null 2>&1 || true ;;
      esac
    done
  done
}
