"""Privacy accounting shared by the services: the ε of each mechanism (`mechanisms`) and the per-dataset ledger
that composes them and refuses work beyond a budget (`ledger`)."""
