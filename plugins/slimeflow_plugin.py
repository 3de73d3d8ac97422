"""Registers slimeflow's extra links (Ray dashboard, W&B run) and its training view (a FastAPI
app at /slimeflow with nav entries; plugins/slimeflow/ui/) with Airflow's plugins manager.

The library itself lives in plugins/slimeflow/ (hidden from the plugins manager by
plugins/.airflowignore); this file is the only plugin module. The API server needs the link
classes registered to show the buttons on `train`.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from slimeflow.links import RayDashboardLink, WandbRunLink
from slimeflow.ui.app import app as training_app


class SlimeflowPlugin(AirflowPlugin):
    name = "slimeflow"
    operator_extra_links = [RayDashboardLink(), WandbRunLink()]
    fastapi_apps = [{"app": training_app, "url_prefix": "/slimeflow",
                     "name": "slimeflow training view"}]
    external_views = [
        {"name": "Training", "href": "/slimeflow/training", "destination": "nav",
         "category": "browse", "url_route": "slimeflow-training"},
        {"name": "Cluster", "href": "/slimeflow/cluster", "destination": "nav",
         "category": "browse", "url_route": "slimeflow-cluster"},
        {"name": "Training", "href": "/slimeflow/training?run_id={RUN_ID}",
         "destination": "dag_run", "url_route": "slimeflow-run-training"},
    ]
