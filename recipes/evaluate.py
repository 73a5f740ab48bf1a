"""Evaluate one or more TIPPo models on a dataset split: generate, score, and compare them in one table.

    python recipes/evaluate.py --config recipes/configs/demo_evaluate.yaml

Writes into `output_dir`: `predictions/<model>.jsonl` (prediction, references and per-sample scores per row),
`metrics.json` (every corpus score and the settings) and `report.md` (the table, ×100, and a few examples); prints
the table. Everything a run may change is in the YAML config or on the command line (`--help` lists it all), e.g.
`--models "SFT=outputs/demo_sft" --num_beams 4`.
"""

from pathlib import Path

from tippo_rl.evaluation import EvaluateArguments, EvaluationArguments, MeteorScorer, evaluate_models
from tippo_rl.output_dir_lock import output_dir_lock
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments


# A model folder that does not exist yet is named with the recipe config and `make` target that train it, from here.
REPO = Path(__file__).resolve().parents[1]


def main(
    script_args: TIPPoScriptArguments,
    evaluate_args: EvaluateArguments,
    eval_args: EvaluationArguments,
    meteor_scorer: MeteorScorer | None = None,
) -> str:
    """Evaluate and report (`evaluate_models`); `meteor_scorer`: a METEOR JVM started beforehand (recipes/demo.py)."""
    return evaluate_models(script_args, evaluate_args, eval_args, repo=REPO, meteor_scorer=meteor_scorer)


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    with parser.reporting_input_errors():  # another run writing into output_dir: one line, exit status 2
        script_args, evaluate_args, eval_args = parser.parse_args_and_config()
        try:
            with output_dir_lock(evaluate_args.output_dir):
                main(script_args, evaluate_args, eval_args)
        except ValueError as error:  # a missing model or split, a bad option value: one line, no traceback, exit 2
            parser.exit(2, f"{parser.prog}: error: {error}\n")
