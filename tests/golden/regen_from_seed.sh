#!/usr/bin/env bash
# Regenerate the golden files from the seed scripts themselves (needs a THUDM/slime checkout; not
# run in CI). The seed scripts run with stub ray/ssh/pkill/sleep/nvidia-smi that only record argv,
# so the goldens are exactly what the seed would have executed, nothing transcribed by hand.
#   usage: regen_from_seed.sh SLIME_OLD (at 2876bf871^, for the 8-GPU script) SLIME_MAIN
set -euo pipefail
old=$1 new=$2 here=$(cd "$(dirname "$0")" && pwd) tmp=$(mktemp -d)
cat >"$tmp/rec" <<'PY'
#!/usr/bin/env python3
import json, os, sys
with open(os.environ["REC_FILE"], "a") as f:
    f.write(json.dumps({"cmd": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd()}) + "\n")
if os.path.basename(sys.argv[0]) == "nvidia-smi" and sys.argv[1:2] == ["topo"]:
    print("\tGPU0\tGPU1\nGPU0\t X \tNV18\nGPU1\tNV18\t X ")
PY
chmod +x "$tmp/rec"
for c in pkill ray nvidia-smi ssh sleep; do ln -s rec "$tmp/$c"; done
printf '10.0.0.%s slots=8\n' 1 2 3 4 >"$tmp/hostfile"
rec() { # out dir script env...
  local out=$1 dir=$2 script=$3; shift 3
  (cd "$dir" && env -i PATH="$tmp:/usr/bin:/bin" REC_FILE="$tmp/$out.jsonl" "$@" bash "$script" >/dev/null 2>&1)
  python3 "$here/extract_seed.py" "$tmp/$out.jsonl" >"$here/seed_$out.json"
}
rec next_1x8 "$old" scripts/run-qwen3-next-80B-A3B-8gpus.sh BASE_FOLDER=/root MASTER_ADDR=10.0.0.1
rec next_4x8 "$new" scripts/run-qwen3-next-80B-A3B.sh BASE_FOLDER=/root MASTER_ADDR=10.0.0.1 HOSTFILE="$tmp/hostfile"
rec q30b "$new" scripts/run-qwen3-30B-A3B.sh
rec q4b "$new" scripts/run-qwen3-4B.sh
rm -rf "$tmp"
