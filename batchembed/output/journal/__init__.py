"""The answer journal: every answer kept the moment it arrives, so a crash costs only the requests in
flight (``writer``); its frames (``frames``), reading it back (``recovery``), where its segments live
(``segments``)."""
