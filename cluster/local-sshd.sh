#!/usr/bin/env bash
# Make this machine the "head" of cluster/local-test.yaml: Ray's on-premise `local` provider drives
# its head over SSH, so an sshd on 127.0.0.1:2222 lets `ray up`, `ray submit` and `ray down` run for
# real on one machine. The head is a dedicated account (raylocal), so the `ray stop` that `ray down`
# runs there can only stop that account's Ray, never another Ray on the machine.
#
# Run as root from a checkout (CI: .ci/run does). Idempotent: installs openssh-server and rsync only
# if missing, creates the account, key and settings only once, starts sshd only if it does not answer.
#   TFMAMBA_VENV  the Python environment the head uses (default: this checkout's .venv); linked as
#                 ~raylocal/tfmamba-venv, which the config's setup_commands put on the head's PATH.
# Changes outside the checkout: user raylocal, ~/.ssh/ray_local{,.pub}, a `Match ... user raylocal`
# block (Port 2222) in ~/.ssh/config, x-only ACLs for raylocal on the folders above the venv's Python. Stop it: kill "$(cat /run/sshd-ray-local.pid)".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=2222
HEAD_USER=raylocal
KEY="$HOME/.ssh/ray_local"
VENV=${TFMAMBA_VENV:-$ROOT/.venv}
PIDFILE=/run/sshd-ray-local.pid

if [ "$(id -u)" != 0 ]; then
    echo "local-sshd.sh: run as root (it installs packages, adds the user $HEAD_USER and starts sshd)" >&2
    exit 1
fi
if [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null || ! command -v setfacl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync acl </dev/null >/dev/null
fi

id -u "$HEAD_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --password '*' "$HEAD_USER"
HEAD_HOME=$(getent passwd "$HEAD_USER" | cut -d: -f6)
install -d -m 700 "$HOME/.ssh"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C ray-local-test -f "$KEY"
install -d -m 700 -o "$HEAD_USER" -g "$HEAD_USER" "$HEAD_HOME/.ssh"
touch "$HEAD_HOME/.ssh/authorized_keys"
grep -qxF "$(cat "$KEY.pub")" "$HEAD_HOME/.ssh/authorized_keys" || cat "$KEY.pub" >>"$HEAD_HOME/.ssh/authorized_keys"
chown "$HEAD_USER:$HEAD_USER" "$HEAD_HOME/.ssh/authorized_keys"
chmod 600 "$HEAD_HOME/.ssh/authorized_keys"
[ -x "$VENV/bin/python" ] || { echo "local-sshd.sh: no Python environment at $VENV (make install first)" >&2; exit 1; }
VENV=$(cd "$VENV" && pwd)
ln -sfn "$VENV" "$HEAD_HOME/tfmamba-venv"
# The head runs this checkout's venv and its base Python (e.g. under /root/.pyenv): let the account
# traverse (x only, by ACL) each folder on those paths that it cannot, and nothing more.
for target in "$ROOT" "$(readlink -f "$VENV/bin/python")"; do
    dir=$(dirname "$target")
    [ -d "$target" ] && dir=$target
    while [ "$dir" != / ] && [ "$dir" != . ]; do
        runuser -u "$HEAD_USER" -- test -x "$dir" || setfacl -m "u:$HEAD_USER:x" "$dir"
        dir=$(dirname "$dir")
    done
done
runuser -u "$HEAD_USER" -- "$VENV/bin/python" -c "import orchestration, tfmamba, ray" ||
    { echo "local-sshd.sh: $HEAD_USER cannot import the project from $VENV" >&2; exit 1; }
touch "$HOME/.ssh/config"
grep -q "^# ray-local-test" "$HOME/.ssh/config" ||
    printf '\n# ray-local-test (cluster/local-sshd.sh)\nMatch host 127.0.0.1 user %s\n  Port %s\n' \
        "$HEAD_USER" "$PORT" >>"$HOME/.ssh/config"

answers() {
    ssh -i "$KEY" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o LogLevel=ERROR "$HEAD_USER@127.0.0.1" true </dev/null
}
if ! answers 2>/dev/null; then
    ssh-keygen -A >/dev/null
    mkdir -p /run/sshd
    /usr/sbin/sshd -p "$PORT" -o ListenAddress=127.0.0.1 -o PidFile="$PIDFILE" -o AllowUsers="$HEAD_USER" \
        -o PermitRootLogin=no -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
    for _ in $(seq 50); do answers 2>/dev/null && break; sleep 0.2; done
    answers || { echo "local-sshd.sh: sshd on 127.0.0.1:$PORT does not accept $KEY" >&2; exit 1; }
fi
echo "local-sshd.sh: $HEAD_USER@127.0.0.1:$PORT answers (key $KEY, head venv $(readlink "$HEAD_HOME/tfmamba-venv"))"
