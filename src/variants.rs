//! Enums whose list of every variant is exhaustive by construction.

/// Declares a fieldless enum together with `ALL`, every variant in declaration order. A variant
/// added to the enum is in `ALL` without a second list to keep: whatever walks `ALL` (the
/// listings and GC walk `Kind::ALL`) cannot miss it.
macro_rules! with_all {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident,)*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            $vis const ALL: [$name; [$(stringify!($variant)),*].len()] = [$($name::$variant),*];
        }
    };
}

pub(crate) use with_all;
