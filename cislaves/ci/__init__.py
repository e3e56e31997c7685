"""Third-party CI for Gerrit: follow the event stream, select events with triggers, keep jobs durably.

Modules: settings (config models), events (typed stream-events records), stream (SSH to Gerrit),
triggers (which events become jobs), queue (SQLite job queue), catchup (events missed while away),
dispatcher (reader, dispatcher and worker threads), cli (the functions behind `fab listen/jobs/enqueue`).
"""
