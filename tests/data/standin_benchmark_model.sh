#!/bin/sh
# STAND-IN for LiteRT's benchmark_model, used only by tests: it measures nothing. It prints a captured output
# of the real tool (tests/data/benchmark_model_new_xnnpack.txt) with the graph and thread flags it received,
# so the test sees that the flags arrived quoted and intact.
graph=""
threads=""
for arg in "$@"; do
  case "$arg" in
    --graph=*) graph="${arg#--graph=}" ;;
    --num_threads=*) threads="${arg#--num_threads=}" ;;
  esac
done
if [ ! -f "$graph" ]; then
  echo "ERROR: Could not open '$graph'."
  echo "Benchmarking failed."
  exit 1
fi
cat <<CAPTURE
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Min runs duration (seconds): [1]
INFO: Num threads: [$threads]
INFO: Min warmup runs: [10]
INFO: Graph: [$graph]
INFO: Signature to run: []
INFO: Enable op profiling: [0]
INFO: #threads used for CPU inference: [$threads]
INFO: Use xnnpack: [1]
INFO: Loaded model $graph
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: XNNPACK delegate created.
INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.
INFO: Replacing 7 out of 7 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.
INFO: The input model file size (MB): 0.089412
INFO: Initialized session in 5.685ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1433 first=1018 curr=335 min=327 max=1018 avg=348.79 std=31 p5=330 median=341 p95=388

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=2890 first=342 curr=338 min=326 max=702 avg=344.936 std=19 p5=331 median=340 p95=372

INFO: Inference timings in us: Init: 5685, First inference: 1018, Warmup (avg): 348.79, Inference (avg): 344.936
INFO: Memory footprint delta from the start of the tool (MB): init=3.01953 overall=3.71484
CAPTURE
