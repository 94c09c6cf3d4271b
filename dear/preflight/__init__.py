"""The preflight: every run a command asks for, checked before Hydra writes anything or a model loads.

- `dear.preflight.command`: the command line as Hydra's own parser reads it, the setup a real student needs,
  and each sweep point composed once;
- `dear.preflight.settings`: a composed config to checked, typed settings (`train_config`, `eval_config`), and
  what this machine must offer (the accelerator, the W&B key, the code sandbox, the hub, where outputs go).

A mistake ends the program in one line on stderr, exit status 2, with nothing written.
"""
