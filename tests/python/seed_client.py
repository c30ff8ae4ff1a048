"""The seed's side of the contract, from an independent client: the Python Temporal SDK starts
`ImageProcessingWorkflow` by name with the seed's JSON input, queries `get_status`, sends the
`cancel` signal, and reads the result, against our Rust worker.

Usage: seed_client.py ADDRESS TASK_QUEUE MODE   (MODE: complete | cancel)
Prints one JSON line with what it observed.
"""

import asyncio
import json
import os
import sys
import uuid

from temporalio.client import Client, WorkflowFailureError


async def main(address: str, task_queue: str, mode: str) -> None:
    client = await Client.connect(address, namespace="default")
    workflow_id = f"image-processing-{uuid.uuid4()}"
    handle = await client.start_workflow(
        "ImageProcessingWorkflow",
        {
            "url": "https://example.com/image.jpg",
            "title": "Product Image",
            "description": "Blue shirt",
            "tags": ["clothing", "shirt"],
            "similarity_search": mode == "cancel",
        },
        id=workflow_id,
        task_queue=task_queue,
    )
    observed = {"workflow_id": workflow_id}
    if mode == "cancel":
        # Wait until the metadata is stored and the (slow) search runs, then cancel by signal.
        for _ in range(200):
            state = await handle.query("get_status")
            if state.get("metadata_stored"):
                break
            await asyncio.sleep(0.1)
        observed["running_state"] = state
        await handle.signal("cancel")
        try:
            await handle.result()
            observed["outcome"] = "completed"
        except WorkflowFailureError as err:
            observed["outcome"] = type(err.cause).__name__
    else:
        observed["result"] = await handle.result()
    observed["final_state"] = await handle.query("get_status")
    print(json.dumps(observed), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
    # The SDK's native runtime can crash while the interpreter finalizes ("PyGILState_Release:
    # thread state must be current"); everything observable is printed by now, so skip it.
    os._exit(0)
