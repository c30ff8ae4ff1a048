"""Build B of `ImageProcessingWorkflow` for the versioning test: a worker of another build whose
workflow code is incompatible with build A's histories. Its first command is a timer where
build A's is the `store_image_metadata` activity, so a workflow started on A would fail to
replay here (a non-deterministic change). It keeps the contract (name, input, `get_status`,
`cancel`, result shape) and marks its jobs with the image id `from-build-b`.

Usage: build_b_worker.py ADDRESS TASK_QUEUE DEPLOYMENT_NAME BUILD_ID
Runs until killed; prints "polling" once the worker runs.
"""

import asyncio
import sys
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig


@workflow.defn(name="ImageProcessingWorkflow")
class ImageProcessingWorkflowB:
    def __init__(self) -> None:
        self.state = {
            "image_id": "from-build-b",
            "status": "processing",
            "metadata_stored": False,
            "similarity_search_completed": False,
            "error": None,
        }

    @workflow.run
    async def run(self, request: dict) -> dict:
        await workflow.sleep(timedelta(milliseconds=100))
        self.state.update(status="completed", metadata_stored=True)
        return {"state": self.state, "similarity": None, "similarity_skipped": "build B skips searches"}

    @workflow.query(name="get_status")
    def get_status(self) -> dict:
        return self.state

    @workflow.signal(name="cancel")
    def cancel(self) -> None:
        self.state["status"] = "cancelled"


async def main(address: str, task_queue: str, deployment: str, build_id: str) -> None:
    client = await Client.connect(address, namespace="default")
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[ImageProcessingWorkflowB],
        deployment_config=WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(deployment_name=deployment, build_id=build_id),
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        ),
    )
    print("polling", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
