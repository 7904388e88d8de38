#!/usr/bin/env bash
# scripts/install_deps.sh waits, bounded and saying who holds it, when
# another process holds a package manager's lock, then installs; it gives up
# with a message when the lock stays held. Run against a lock file of its
# own and a stand-in apt-get that records its calls, so that the machine's
# package manager is never touched.
#   install_deps_waits_for_apt.sh <source dir>
set -euo pipefail
source_dir=$1
command -v lslocks >/dev/null 2>&1 || { echo "lslocks (util-linux) is missing: skipped"; exit 77; }
# As another user install_deps would go through sudo, whose own PATH would
# reach the real apt-get.
[ "$(id -u)" -eq 0 ] || { echo "not root: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
cat >"$work/bin/apt-get" <<'FAKE'
#!/usr/bin/env bash
echo "apt-get $*" >>"$APT_CALLS"
FAKE
chmod +x "$work/bin/apt-get"
export APT_CALLS="$work/calls" SYNCBN_APT_LOCKS="$work/lock" PATH="$work/bin:$PATH"
touch "$work/lock"
missing=syncbn-no-such-package  # never installed, so install_deps has work to do
fail() { echo "FAIL: $*"; cat "$work/out" 2>/dev/null; exit 1; }

# 1. The lock is released after about 3 s: install_deps waits, then installs.
flock "$work/lock" sleep 3 >/dev/null 2>&1 &
sleep 0.5
SYNCBN_APT_LOCK_TIMEOUT=30 bash "$source_dir/scripts/install_deps.sh" "$missing" >"$work/out" 2>&1 ||
  fail "install_deps failed although the lock was released"
grep -q "another package manager, process [0-9]* (flock), holds $work/lock; waiting up to 30 s" "$work/out" ||
  fail "no message about the wait"
grep -q "install -y .*$missing" "$work/calls" || fail "apt-get install was not called after the wait"
wait

# 2. The lock stays held: install_deps gives up after its timeout, installing nothing.
rm -f "$work/calls"
flock "$work/lock" sleep 5 >/dev/null 2>&1 &
sleep 0.5
if SYNCBN_APT_LOCK_TIMEOUT=2 bash "$source_dir/scripts/install_deps.sh" "$missing" >"$work/out" 2>&1; then
  fail "install_deps succeeded while the lock was held"
fi
grep -q "is still held by process [0-9]* (flock) after 2 s, expected it free" "$work/out" || fail "no message on giving up"
[ ! -e "$work/calls" ] || fail "apt-get ran while the lock was held"
wait
echo "install_deps waited for the lock and gave up when it stayed held"
