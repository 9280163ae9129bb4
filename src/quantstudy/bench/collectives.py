"""What tensor and pipeline parallelism cost on the wire: vLLM's collectives priced from physics.

Under tensor parallelism every decoder layer ends its attention and its MLP with an
all-reduce of the activations (tokens x hidden x 2 bytes); a pipeline stage hands the same
activations to the next one. Neither overlaps with the GEMMs in vLLM, so their time adds
to every step. Each is priced as a latency (synchronisation, a barrier or a protocol
hand-shake) plus the bytes each GPU moves divided by what its link delivers.

vLLM's algorithm choice (csrc/custom_all_reduce.cuh, distributed/device_communicators/
custom_all_reduce.py, v0.6-v0.10):
- its *custom* all-reduce (peer-to-peer loads through CUDA IPC) runs for messages under
  8 MiB on 2 GPUs of any kind, or on 4-8 GPUs all connected by NVLink -- vLLM disables it
  on more than two PCIe-only GPUs;
  - one-shot (every GPU reads every peer's whole buffer and reduces: (n-1) x M bytes in)
    on 2 GPUs, or under 512 KiB on up to 4 GPUs / 256 KiB on up to 8;
  - two-shot otherwise (reduce-scatter then all-gather: 2 (n-1)/n x M bytes in);
- NCCL's ring otherwise (2 (n-1)/n x M bytes over the slowest link, plus a longer
  hand-shake).
Link rates are datasheet per-direction figures times the fraction that nccl-tests'
"bus bandwidth" typically reaches (~80% on NVLink, ~70% on PCIe, ~85% on InfiniBand);
latencies are the order of magnitude NVIDIA and vLLM report for small messages. None of
these is fitted to the validation cells (`roofline_validation`).
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOM_AR_MAX_BYTES = 8 * 2**20      # vLLM's custom all-reduce buffer: larger messages go to NCCL
ONE_SHOT_MAX_BYTES = {4: 512 * 2**10, 8: 256 * 2**10}   # world size (at most) -> one-shot limit


@dataclass(frozen=True)
class Link:
    name: str
    gb_s: float          # per direction, per GPU, datasheet (10^9 bytes/s)
    efficiency: float    # share of it collectives reach (nccl-tests bus bandwidth)
    switched: bool       # every GPU reaches every other at full rate (NVSwitch) or not (PCIe tree)

    @property
    def bytes_per_s(self) -> float:
        return self.gb_s * 1e9 * self.efficiency


LINKS: dict[str, Link] = {link.name: link for link in [
    Link("pcie4", 32.0, 0.70, False),      # PCIe 4.0 x16: 64 GB/s both ways (A6000, L40S, A100 PCIe)
    Link("pcie5", 64.0, 0.70, False),      # PCIe 5.0 x16 (H100 PCIe)
    Link("nvlink3", 300.0, 0.80, True),    # A100 SXM: 12 links, 600 GB/s both ways, NVSwitch (HGX)
    Link("nvlink4", 450.0, 0.80, True),    # H100/H200 SXM: 18 links, 900 GB/s both ways
    Link("nvlink5", 900.0, 0.80, True),    # B200: 1.8 TB/s both ways
]}
# Across nodes: one 400 Gb/s NDR InfiniBand port per GPU (DGX/HGX H100 and later; 200 Gb/s
# HDR on A100 nodes) -- 50 GB/s per direction, ~85% reached.
NETWORK = Link("infiniband-ndr", 50.0, 0.85, True)
NETWORK_BY_LINK = {"nvlink3": Link("infiniband-hdr", 25.0, 0.85, True)}

CUSTOM_AR_LATENCY_S = 6e-6      # two flag barriers over NVLink/PCIe P2P (vLLM's PR: ~5-10 us at small sizes)
NCCL_LATENCY_S = 20e-6          # NCCL's ring on a small message within a node
P2P_LATENCY_S = 15e-6           # a pipeline hand-off across nodes (NCCL send/recv over InfiniBand)


def all_reduce_algorithm(message_bytes: float, tp: int, link: Link) -> str:
    """Which all-reduce vLLM runs: 'one-shot', 'two-shot' (its custom kernel) or 'nccl'."""
    if tp <= 1:
        return "none"
    custom = message_bytes < CUSTOM_AR_MAX_BYTES and (tp == 2 or (link.switched and tp in (4, 6, 8)))
    if not custom:
        return "nccl"
    if tp == 2:
        return "one-shot"
    limit = ONE_SHOT_MAX_BYTES[4] if tp <= 4 else ONE_SHOT_MAX_BYTES[8]
    return "one-shot" if message_bytes < limit else "two-shot"


def all_reduce_s(message_bytes: float, tp: int, link: Link) -> float:
    """Seconds for one all-reduce of `message_bytes` (each GPU's whole tensor) across `tp` GPUs."""
    algo = all_reduce_algorithm(message_bytes, tp, link)
    if algo == "none":
        return 0.0
    if algo == "one-shot":
        # Through a switch each GPU pulls the (n-1) peers' buffers through its own links; on
        # PCIe (2 GPUs only) the one peer's buffer crosses the one link.
        return CUSTOM_AR_LATENCY_S + (tp - 1) * message_bytes / link.bytes_per_s
    moved = 2.0 * (tp - 1) / tp * message_bytes
    if algo == "two-shot":
        return 2 * CUSTOM_AR_LATENCY_S + moved / link.bytes_per_s
    # NCCL ring: 2 (n-1) steps, each a hop's latency; on PCIe the tree through the root
    # complex shares one x16 link per GPU, which the per-GPU rate already is.
    return NCCL_LATENCY_S + 2 * (tp - 1) * 1e-6 + moved / link.bytes_per_s


def pipeline_hop_s(message_bytes: float, network: Link = NETWORK) -> float:
    """Seconds for one pipeline stage to hand its activations to the next node's stage."""
    return P2P_LATENCY_S + message_bytes / network.bytes_per_s
