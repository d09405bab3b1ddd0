"""torch: a `torch.export` ExportedProgram saved with `torch.export.save` (`.pt2`). Inputs are the example
inputs recorded in the program (shapes and dtypes), filled with seeded noise. On CUDA, every sample is timed
with CUDA events (the GPU's own clock) instead of the host's wall clock."""
import torch

from agents.runtimes import Loaded, ModelLoadError, check_file


def version():
    return torch.__version__


def build():
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _example_inputs(program):
    shapes = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name in program.graph_signature.inputs_to_parameters \
                or node.name in program.graph_signature.inputs_to_buffers:
            continue
        val = node.meta.get("val")
        if val is not None and hasattr(val, "shape"):
            shapes.append((tuple(int(d) for d in val.shape), val.dtype))
    return shapes


def load(path, threads=1, device="cpu"):
    check_file(path)
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("torch runtime: device 'cuda' requested but no CUDA GPU is available")
    torch.set_num_threads(int(threads))
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelLoadError(f"torch cannot load {path} as an ExportedProgram: {' '.join(str(exc).split())[:300]}") from None
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for shape, dtype in _example_inputs(program):
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype))
    module = program.module()
    for p in module.parameters():  # no autograd graph per run, without switching grad off process-wide
        p.requires_grad_(False)
    inputs = [{"name": f"input{i}", "shape": list(t.shape), "dtype": str(t.dtype)} for i, t in enumerate(tensors)]
    if device == "cuda":
        module = module.to("cuda")
        tensors = [t.to("cuda") for t in tensors]

        def run():
            return module(*tensors)

        return Loaded(run, inputs, event_timer=_cuda_event_timer(run))

    def run():
        return module(*tensors)

    return Loaded(run, inputs)


def _cuda_event_timer(run):
    """Times each run between two CUDA events; returns nanoseconds per run."""
    def time_runs(count):
        out = []
        for _ in range(count):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            out.append(int(start.elapsed_time(end) * 1e6))
        return out

    return time_runs
