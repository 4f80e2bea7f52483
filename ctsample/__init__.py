"""ctsample: patient-level splits, imbalance statistics and balanced slice plans (index only, no torch)."""
from __future__ import annotations
