"""Turn a recording of a seed run script into a golden file.

The seed scripts are run with stub `ray`, `ssh`, `pkill`, `sleep` and `nvidia-smi` on PATH that
append their argv as JSON lines (see regen_from_seed.sh). This keeps only what our builders must
reproduce: the Ray head/worker start lines, the runtime env and the train.py entrypoint.

"entrypoint" is the argv after `ray job submit --`, plain tokens. Ray >= 2.56 joins them with
shlex.join and its shell splits them back, so it is exactly what the seed's train.py receives;
tests/unit/test_builders_golden.py holds what OUR train.py receives (through Ray's join and sh,
for old and new Ray) to it.
"""
import json
import shlex
import sys


def extract(lines):
    out = {"ray_start_head": None, "ray_start_workers": [], "runtime_env": None, "entrypoint": None}
    for rec in lines:
        argv = rec["argv"]
        if rec["cmd"] == "ray" and argv[:2] == ["start", "--head"]:
            out["ray_start_head"] = ["ray"] + argv
        elif rec["cmd"] == "ssh":
            # the seed's worker command is a `;`-joined shell line; keep only its `ray start`
            for part in argv[1].split(";"):
                words = shlex.split(part)
                if words[:2] == ["ray", "start"]:
                    out["ray_start_workers"].append(words)
        elif rec["cmd"] == "ray" and argv[:2] == ["job", "submit"]:
            env_arg = next(a for a in argv if a.startswith("--runtime-env-json="))
            out["runtime_env"] = json.loads(env_arg.split("=", 1)[1])
            out["entrypoint"] = argv[argv.index("--") + 1:]
            out["submit_cwd"] = rec["cwd"]
    out["ray_start_workers"].sort()
    return out


if __name__ == "__main__":
    recs = [json.loads(line) for line in open(sys.argv[1])]
    json.dump(extract(recs), sys.stdout, indent=1)
    sys.stdout.write("\n")
