//! Java enums on the wire: written by name (fastjson), read by name or ordinal (C++ client).

/// Defines a Java enum mirror: `name()`, `ordinal()`, `from_name()`, `from_ordinal()`, `Default`,
/// `Display`, serialization by name, and deserialization from the name, the ordinal as a JSON
/// number, or the ordinal as a decimal string.
macro_rules! java_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($java:literal), default $default:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $ord:literal => $jname:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $ord, )+
        }

        impl $name {
            /// Every constant, in ordinal order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The Java constant name, as fastjson writes it.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $jname,)+
                }
            }

            /// The Java ordinal (which the C++ client writes instead of the name).
            pub const fn ordinal(self) -> i32 {
                self as i32
            }

            /// The constant with this Java name (exact, case-sensitive as Java's `valueOf`).
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($jname => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The constant with this ordinal.
            pub fn from_ordinal(ordinal: i64) -> Option<Self> {
                match ordinal {
                    $($ord => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", $java, " name or ordinal"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_name(v)
                            .or_else(|| v.parse::<i64>().ok().and_then($name::from_ordinal))
                            .ok_or_else(|| {
                                E::custom(format!(
                                    concat!("unknown ", $java, " {:?}"),
                                    $crate::codec::body::cut(v)
                                ))
                            })
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$name, E> {
                        $name::from_ordinal(v).ok_or_else(|| {
                            E::custom(format!(concat!("unknown ", $java, " ordinal {}"), v))
                        })
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        match i64::try_from(v) {
                            Ok(v) => self.visit_i64(v),
                            Err(_) => Err(E::custom(format!(
                                concat!("unknown ", $java, " ordinal {}"),
                                v
                            ))),
                        }
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
pub(crate) use java_enum;
