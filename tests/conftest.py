"""Test-session settings: one torch thread. The tests use small tensors, for which thread start-up
and contention on a 2-core machine cost more than they save."""
import torch

torch.set_num_threads(1)
