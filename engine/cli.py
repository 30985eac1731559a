"""The `engine` command: `engine serve MODEL` starts the OpenAI-compatible server, as `vllm serve` does."""
from typing import Annotated

import typer

from engine.server.listen import claim_port

app = typer.Typer(name="engine", help="The pagebench paged-attention inference engine.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def main() -> None:
    """The pagebench paged-attention inference engine."""


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="an HF directory, a GGUF file, `demo`, or `random:<bundled config>`")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="PAGEBENCH_API_KEY",
                                                help="require Authorization: Bearer KEY on /v1/*")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    max_num_seqs: Annotated[int, typer.Option(min=1, help="most requests in one batch")] = 256,
    max_num_batched_tokens: Annotated[int, typer.Option(min=1, help="most tokens in one step")] = 4096,
    max_waiting: Annotated[int, typer.Option(min=1, help="more waiting requests than this get 503")] = 1024,
    kv_cache_fraction: Annotated[float, typer.Option(help="share of GPU memory for weights, activations and KV")] = 0.9,
    kv_cache_tokens: Annotated[int | None, typer.Option(help="size the KV cache in tokens instead")] = None,
    block_size: Annotated[int, typer.Option(help="tokens per KV block (a power of two)")] = 16,
    max_model_len: Annotated[int | None, typer.Option(min=2, help="cap the context length")] = None,
    served_model_name: Annotated[list[str] | None, typer.Option(help="name(s) clients use; default: MODEL")] = None,
    no_prefix_caching: Annotated[bool, typer.Option("--no-prefix-caching", help="disable prefix caching")] = False,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, help="GPUs (or CPU processes) to shard over")] = 1,
    disable_custom_all_reduce: Annotated[bool, typer.Option(
        "--disable-custom-all-reduce", help="with tensor parallelism, send every all-reduce through NCCL")] = False,
    enforce_eager: Annotated[bool, typer.Option(
        "--enforce-eager", help="run every step eagerly: no CUDA graphs for decode, prefill or mixed steps")] = False,
    async_scheduling: Annotated[bool | None, typer.Option(
        "--async-scheduling/--no-async-scheduling",
        help="schedule and launch the next step before reading this step's tokens; default: on a GPU")] = None,
    cpu_threads: Annotated[int | None, typer.Option(
        min=1, help="threads per rank on the CPU; default: OMP_NUM_THREADS, else the cores less one for the server")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer (HF directory or GGUF) for random: models")] = None,
    seed: Annotated[int, typer.Option(help="seed for random weights and unseeded sampling")] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    access_log: Annotated[bool, typer.Option(help="log one line per HTTP request")] = True,
    request_log: Annotated[str | None, typer.Option(
        help="append one JSON line per finished request to this file: the engine's timestamps and token counts")] = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    # Before torch is even imported: a port in use must fail in a moment, not after a model has loaded.
    try:
        sock = claim_port(host, port)
    except ValueError as e:
        typer.secho(f"engine serve: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if request_log is not None:
        try:
            open(request_log, "a").close()
        except OSError as e:
            sock.close()
            typer.secho(f"engine serve: --request-log {request_log}: {e.strerror}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
    from engine.server.serve import ServeArgs, serve as run
    from engine.tp_workers import WorkerFailed

    engine_kwargs = dict(dtype=dtype, device=device, block_size=block_size, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, kv_cache_fraction=kv_cache_fraction,
                         kv_cache_tokens=kv_cache_tokens, max_model_len=max_model_len,
                         enable_prefix_caching=not no_prefix_caching, seed=seed,
                         tensor_parallel_size=tensor_parallel_size,
                         disable_custom_all_reduce=disable_custom_all_reduce, async_scheduling=async_scheduling,
                         enforce_eager=enforce_eager, cpu_threads=cpu_threads)
    args = ServeArgs(model, host, port, api_key, list(served_model_name or []), max_waiting, tokenizer,
                     log_level.lower(), access_log, engine_kwargs, request_log=request_log, sock=sock)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        typer.secho(f"engine serve: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except WorkerFailed as e:
        typer.secho(f"engine serve: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    finally:
        sock.close()


if __name__ == "__main__":
    app()
