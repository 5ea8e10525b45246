//! PLACEHOLDER: PyO3 binding
