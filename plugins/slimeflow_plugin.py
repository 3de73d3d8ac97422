"""Registers slimeflow's extra links (Ray dashboard, W&B run) with Airflow's plugins manager.

The library itself lives in plugins/slimeflow/ (hidden from the plugins manager by
plugins/.airflowignore); this file is the only plugin module. The API server needs the link
classes registered to show the buttons on `train`.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from slimeflow.links import RayDashboardLink, WandbRunLink


class SlimeflowPlugin(AirflowPlugin):
    name = "slimeflow"
    operator_extra_links = [RayDashboardLink(), WandbRunLink()]
