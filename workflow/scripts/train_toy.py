"""Train the embedded toy model; write its checkpoints, their handles and the training log."""
from pathlib import Path

import torch

from circuitflow.models.handle import ModelHandle, write_handle, write_handles
from circuitflow.recipes import ToyRecipe, recipe_from_dict
from circuitflow.snakejob import snakemake_job
from circuitflow.toy import train_toy

with snakemake_job(snakemake) as log:
    torch.set_num_threads(2)  # fixed, so the trained weights do not depend on the cores a job is given
    name = snakemake.wildcards.model
    recipe = recipe_from_dict(ToyRecipe, {"seed": snakemake.params.seed, **snakemake.params.recipe},
                              f"models.{name}.recipe")
    out = Path(snakemake.output.checkpoints)
    train_toy(recipe, out, Path(snakemake.output.training_log))
    handles = [ModelHandle(name, str(out / f"step{s}"), f"step{s}", "toy", {"step": s})
               for s in recipe.checkpoint_steps]
    write_handles(handles, snakemake.output.index)
    write_handle(handles[-1], snakemake.output.handle)
