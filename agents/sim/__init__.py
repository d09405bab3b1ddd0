"""Simulated devices: stand-ins that behave like a device without being one, each saying so in its name and in
what it reports. `fpga`: an analytic model of an FPGA accelerator (devices `fpga-*-model`, results marked
`simulated`); `loopback_adbd`: a real ADB-protocol endpoint on 127.0.0.1 that runs commands on this host (the
phone `ofa-bench-loopback`, `ro.ofa_bench.simulated=1`), with `adb_auth`, the phone's side of adb's RSA
authentication. Run the loopback phone with `python -m agents.sim.loopback_adbd --port PORT` (or in a child process
with `loopback_adbd.spawn`). `local_sshd`: a throwaway OpenSSH server on 127.0.0.1 with keys of its own, the
harness that tests and benchmarks reach the ssh transport through (not a device)."""
