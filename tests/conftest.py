"""Shared fixtures for the tippo_rl tests. Everything runs offline on CPU in seconds.

Fixtures (read-only: never train, re-seed or `set_daa_lambda1` them in place; `copy.deepcopy` first):

- `tiny_model_and_processor` (session): `(TIPPoModel, TIPPoProcessor)` from `build_tiny_tippo(seed=0)`, in eval
  mode. k = 2, d = d_φ = 64, N_max = 5, 32×32 images, about 0.4M parameters, φ pretrained on demo pairs. Its
  freshly initialised decoder repeats one or two tokens whatever the input, so greedy generations say nothing.
- `tiny_model_varied_outputs` (session): a copy of that model whose decoder weights carry seeded noise, so that
  greedy generations are non-trivial and depend on the inputs. Use it wherever a test compares generations
  ("identical generations" on input-independent outputs would prove nothing).
- `tiny_causal_model_and_processor` (session): `build_tiny_tippo(decoder="llama", seed=0)` in eval mode, its Llama
  decoder's weights carrying seeded noise as in `tiny_model_varied_outputs` (greedy generations depend on the inputs),
  and its processor (`causal_lm`: the title is the decoder's prompt). About 0.3M parameters.
- `demo_dataset_dir` (session): a `pathlib.Path` holding `make_demo_dataset(tmp, num_train=24, num_test=8)`
  (English, seed 0): `train.jsonl`, `test.jsonl` and `images/`, rows with 1–5 images.

Every test also starts from `torch.manual_seed(0)` (autouse), so no test depends on the order tests run in (`make test`
runs them on two pytest-xdist workers, the longest first), and runs
with one intra-op thread: for these tiny models a second thread only adds wake-up latency, which on a shared 2-core
machine made small ops up to 20× slower.
"""

from __future__ import annotations

import copy
import os


os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: no test may reach the Hub

import pytest  # noqa: E402
import torch  # noqa: E402

from tippo_rl import build_tiny_tippo, make_demo_dataset  # noqa: E402


def pytest_collection_modifyitems(items):
    """The longest tests first (`slow`, then multi-process `distributed`): `make test` runs the suite on two workers
    (pytest-xdist, handing out two tests at a time), and a long test started last would keep one worker busy after the
    other has finished."""
    items.sort(
        key=lambda item: (item.get_closest_marker("slow") is None, item.get_closest_marker("distributed") is None)
    )


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_and_processor():
    model, processor = build_tiny_tippo(seed=0)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_model_varied_outputs(tiny_model_and_processor):
    model = copy.deepcopy(tiny_model_and_processor[0])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.language_model.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tiny_model_varied_outputs, tiny_model_and_processor):
    """`tiny_model_varied_outputs` and the processor saved to a folder, as a trained model would be (read-only)."""
    folder = tmp_path_factory.mktemp("model")
    tiny_model_varied_outputs.save_pretrained(folder)
    tiny_model_and_processor[1].save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_model_and_processor():
    model, processor = build_tiny_tippo(seed=0, decoder="llama")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.language_model.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model.eval(), processor


@pytest.fixture(scope="session")
def demo_dataset_dir(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=24, num_test=8)
