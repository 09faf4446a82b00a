//! Small helpers for building protocol messages.

/// Builds a protocol struct from its defaults plus the named fields (the
/// generated types are non-exhaustive, so struct literals are not allowed).
macro_rules! mk {
    ($t:ty { $($f:ident : $v:expr),* $(,)? }) => {{
        let mut v = <$t>::default();
        $( v.$f = $v; )*
        v
    }};
}
