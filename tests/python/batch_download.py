"""Downloads one mailbox from the emulator the way Google's samples and common
backup tools do: google-api-python-client, a service-account key with
domain-wide delegation, messages.list page by page, then messages.get
(format=raw) in batches of 50 through the client's own BatchHttpRequest.

Nothing here knows it talks to an emulator except the discovery document's
rootUrl, rewritten as the emulator's README says. Prints one JSON object:
the ids listed, the ids fetched, and the inner errors by status and reason.

    python batch_download.py BASE_URL KEY_FILE MAILBOX
"""

import json
import sys
from collections import Counter

from google.oauth2 import service_account
from googleapiclient import discovery_cache
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

base, key_file, mailbox = sys.argv[1:4]
creds = service_account.Credentials.from_service_account_file(
    key_file,
    scopes=["https://www.googleapis.com/auth/gmail.readonly"],
    subject=mailbox,
)
doc = json.loads(discovery_cache.get_static_doc("gmail", "v1"))
doc["rootUrl"] = doc["mtlsRootUrl"] = base
gmail = build_from_document(doc, credentials=creds)

listed = []
request = gmail.users().messages().list(userId="me", maxResults=500)
while request is not None:
    page = request.execute()
    listed.extend(m["id"] for m in page.get("messages", []))
    request = gmail.users().messages().list_next(request, page)

fetched = []
errors = Counter()


def on_answer(request_id, response, exception):
    if exception is None:
        fetched.append(response["id"])
        return
    reason = "?"
    if isinstance(exception, HttpError):
        try:
            reason = json.loads(exception.content)["error"]["errors"][0]["reason"]
        except (ValueError, KeyError, IndexError, TypeError):
            pass
        errors[f"{exception.resp.status} {reason}"] += 1
    else:
        errors[f"{type(exception).__name__}"] += 1


for start in range(0, len(listed), 50):
    batch = gmail.new_batch_http_request(callback=on_answer)
    for message_id in listed[start : start + 50]:
        batch.add(gmail.users().messages().get(userId="me", id=message_id, format="raw"))
    batch.execute()

print(json.dumps({"listed": listed, "fetched": fetched, "errors": dict(errors)}))
