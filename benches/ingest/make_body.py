"""Writes a realistic batch of 100 first-party events (JSON array) for the ingest benchmark."""
import json
import sys
import time

now = int(time.time() * 1000)
kinds = ["POST_REACTION", "COMMENT", "STORY_REPLY", "DM_IN", "LINK_CLICK"]
events = []
for i in range(100):
    k = kinds[i % 5]
    e = {"event_id": f"bench-{i}", "platform": "INSTAGRAM", "kind": k, "account_id": f"acct-{i % 37}",
         "actor_id": f"user-{i * 7919 % 1000}", "event_time": now - 60000 + i * 10}
    if k in ("POST_REACTION", "COMMENT", "STORY_REPLY"):
        e["content_id"] = f"post-{i % 37}-{i % 3}"
        e["content_type"] = "FEED"
    if k == "COMMENT":
        e["text"] = "where can I buy this? \U0001F60D"
    if k == "POST_REACTION":
        e["reaction"] = "LOVE"
    if k == "LINK_CLICK":
        e["click_id"] = f"clk-{i}"
    events.append(e)
json.dump(events, open(sys.argv[1], "w"))
