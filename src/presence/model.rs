//! A model test of the presence core (to be written).
