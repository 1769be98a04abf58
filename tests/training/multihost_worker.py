"""One process of a real multi-process run on this machine (used by tests/training/test_multihost.py).

  python tests/training/multihost_worker.py --process_id=I --num_processes=N --port=P \
      --workdir=DIR --data_dir=DIR --result=FILE [--kill_at=STEP] [--steps=N] [--eval_every=K]

Starts JAX with 4 CPU devices and gloo collectives through `hosts.initialize` (the same path
as `main --coordinator_address`), trains `configs/test.py` with `train.train_and_evaluate`,
and writes FILE (JSON: step, preempted, APs; with `.npz` beside it: the final parameters).
`--kill_at=S` sends SIGTERM to this process after step S and sleeps `--kill_sleep` seconds,
so JAX's notifier reports the notice while the other hosts go on; `--kill_in_compile=T`
sends it T seconds after the train step's compile starts. A hang dumps every
thread's stack and exits after `--timeout` seconds (faulthandler).
"""

import argparse
import faulthandler
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--process_id", type=int, required=True)
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--result", required=True)
  p.add_argument("--kill_at", type=int, default=0)
  p.add_argument("--kill_sleep", type=float, default=3.0)
  p.add_argument("--kill_in_compile", type=float, default=0.0,
                 help="SIGTERM this many seconds after the train step's compile starts")
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--eval_every", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=0)
  p.add_argument("--timeout", type=float, default=240.0)
  args = p.parse_args()
  faulthandler.dump_traceback_later(args.timeout, exit=True)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax
  jax.config.update("jax_num_cpu_devices", 4)
  from tinyfaces_jax.training import hosts
  hosts.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  import numpy as np
  from configs import test as test_config
  from tinyfaces_jax.training import train
  from tinyfaces_jax.data import pipeline
  pipeline.hide_gpus_from_tf()

  c = test_config.get_config(f"steps={args.steps}" if args.steps else None)
  c.data.data_dir = args.data_dir
  c.eval.batch_size = 4
  if args.eval_every:
    c.train.eval_every = args.eval_every
  if args.checkpoint_every:
    c.train.checkpoint_every = args.checkpoint_every

  def hook(step):
    print(f"[host {args.process_id}] after step {step}", flush=True)
    if step == args.kill_at:
      sigterm()
      time.sleep(args.kill_sleep)

  killed_at = []

  def sigterm():
    killed_at.append(time.time())
    os.kill(os.getpid(), signal.SIGTERM)

  if args.kill_in_compile:
    import threading
    log = train._log

    def log_and_arm(msg):
      log(msg)
      if msg.startswith("compiling the train step"):
        print(f"[host {args.process_id}] SIGTERM in {args.kill_in_compile} s", flush=True)
        threading.Timer(args.kill_in_compile, sigterm).start()
    train._log = log_and_arm

  t0 = time.time()
  result = train.train_and_evaluate(c, args.workdir, step_hook=hook)
  out = {"step": result["step"], "preempted": result["preempted"],
         "seconds": time.time() - t0,
         "after_sigterm_s": time.time() - killed_at[0] if killed_at else None,
         "evals": [{k: r.get(k) for k in ("step", "scalars", "num_images")}
                   for r in result["evals"]]}
  with open(args.result, "w") as f:
    json.dump(out, f)
  leaves = jax.tree.leaves(jax.device_get(result["state"].params))
  np.savez(args.result + ".npz", *[np.asarray(x) for x in leaves])
  print(f"[host {args.process_id}] done: {out}", flush=True)
  from tinyfaces_jax.training import checkpointing
  checkpointing.exit_if_work_abandoned()  # as main.py does
  return 0


if __name__ == "__main__":
  sys.exit(main())
