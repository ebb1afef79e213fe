//! GWS notification JSON -> proto. (being written)
