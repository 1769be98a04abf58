"""The training system shared by every detector family.

  train.py          RunSpec (config -> frozen sections), train_and_evaluate / evaluate_only:
                    the loop (agreement checks, prepare once, resume, agreed preemption saves,
                    periodic evaluation)
  train_step.py     sharded init and the one jitted train step (matching + OHEM inside,
                    gradient accumulation, bf16)
  train_state.py    TrainState (step, params, batch_stats, opt_state)
  optim.py          optimizer and learning-rate schedules
  checkpointing.py  orbax checkpoints, run facts, agreed preemption, restore_variables
                    (model weights without an optimizer)
  sharding.py       topology-aware mesh, batch placement, device prefetch
  hosts.py          multi-process start-up, agreement checks, host-0-first, preemption notice
  eval_loop.py      evaluation on every host: one prediction pass per image set, the
                    configured evaluators (evaluation/evaluators.py) on host 0
"""
