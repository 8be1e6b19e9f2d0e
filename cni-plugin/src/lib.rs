//! netd-cni: the CNI plugin that attaches containers to the node subnet netd leased.
