"""The rollouts stage: G sampled, verified responses per prompt, written to the datastore.

`generate.py` (records, the `Generator` protocol, `generate_rollouts`), `hf_generator.py` and
`vllm_generator.py` (the backends), `prompts.py` (prompt sources), `verify.py` (verifiers),
`reasoning_gym_tasks.py`, `ray_generate.py` (Ray Data), `job.py` (the stage: resume, batches, one
store version per batch), `cli.py` (`spanroute rollouts generate`).
"""

from train.rollouts.generate import Generator, PromptRecord, Sample, Sampling, generate_rollouts
from train.rollouts.hf_generator import HFGenerator
from train.rollouts.job import GenerateOptions, GenerateResult, generate_to_store
from train.rollouts.prompts import PromptSource, load_prompts
from train.rollouts.verify import VERIFIERS, get_verifier

__all__ = ["VERIFIERS", "GenerateOptions", "GenerateResult", "Generator", "HFGenerator", "PromptRecord",
           "PromptSource", "Sample", "Sampling", "generate_rollouts", "generate_to_store", "get_verifier",
           "load_prompts"]
